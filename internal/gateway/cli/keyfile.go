package cli

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// keyFile is where --key-file puts a client API key: a temporary file beside the target, made
// before the API is asked for the key, so that a directory that cannot be written fails before a key
// is issued that would have nowhere to go. commit renames it over the target, so a reader (an agent
// with --api-key-file, a compose service) sees the old key or the new one, never half of one.
type keyFile struct {
	path string
	tmp  *os.File
}

func prepareKeyFile(path string) (*keyFile, error) {
	if info, err := os.Stat(path); err == nil && info.IsDir() {
		return nil, usagef("--key-file: %s is a directory", path)
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	// CreateTemp makes the file with mode 0600, which the key keeps after the rename.
	tmp, err := os.CreateTemp(dir, "."+base+".*.tmp")
	if err != nil {
		return nil, usagef("--key-file: cannot write beside %s: %v", path, reason(err))
	}
	return &keyFile{path: path, tmp: tmp}, nil
}

// commit writes key and puts the file in place.
func (k *keyFile) commit(key string) error {
	if err := k.tmp.Chmod(0o600); err != nil {
		return err
	}
	if _, err := io.WriteString(k.tmp, key+"\n"); err != nil {
		return err
	}
	if err := k.tmp.Sync(); err != nil {
		return err
	}
	if err := k.tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(k.tmp.Name(), k.path); err != nil {
		return err
	}
	k.tmp = nil
	return nil
}

// discard removes the temporary file unless commit put it in place.
func (k *keyFile) discard() {
	if k == nil || k.tmp == nil {
		return
	}
	_ = k.tmp.Close()
	_ = os.Remove(k.tmp.Name())
}

// holdsKey tells whether path already holds a key: a file that is not empty once trimmed. What key
// it is cannot be checked from here (the gateway keeps only hashes).
func holdsKey(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	if info, err := f.Stat(); err != nil || !info.Mode().IsRegular() {
		return false
	}
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	return err == nil && strings.TrimSpace(string(b)) != ""
}

// writeKey is commit, worded for the operator: the key exists on the gateway now, so a failure here
// says how to get another one.
func writeKey(k *keyFile, key, domain string) error {
	if err := k.commit(key); err != nil {
		return fmt.Errorf("the gateway issued a key for %s, but it could not be written to %s: %v; get a new one with: hopgate-server domains rotate-key %s --key-file %s",
			domain, k.path, reason(err), domain, k.path)
	}
	return nil
}

// reason drops the path from an *fs.PathError, which the messages name already.
func reason(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
