package acme

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/gofrs/flock"
)

// Storage keeps certificates and account data under slash-separated keys such as
// "certificates/example.com.crt". Load returns an error wrapping fs.ErrNotExist for a missing key.
// The interface follows certmagic's, so that a database-backed store shared by several gateways
// can replace the file store without touching the Manager.
type Storage interface {
	Load(ctx context.Context, key string) ([]byte, error)
	Store(ctx context.Context, key string, value []byte) error
	Delete(ctx context.Context, key string) error
	// List returns the keys directly under prefix (or all below it when recursive), sorted.
	List(ctx context.Context, prefix string, recursive bool) ([]string, error)
	Locker
}

// Locker serialises work on one name across every Manager sharing a Storage, so that two gateways
// never order the same certificate at once. Lock blocks until the lock is held or ctx ends.
type Locker interface {
	Lock(ctx context.Context, name string) error
	Unlock(ctx context.Context, name string) error
}

// FileStorage is a Storage in a local directory. Every file is written 0600 through a temporary file
// and a rename, so a reader sees the old or the new content, never a torn write. Locks are advisory
// file locks (flock) in Dir/locks, released by the kernel if the process dies.
type FileStorage struct {
	Dir string

	mu    sync.Mutex
	locks map[string]*flock.Flock
}

// NewFileStorage returns a FileStorage rooted at dir, creating it (0700) if needed.
func NewFileStorage(dir string) (*FileStorage, error) {
	if dir == "" {
		return nil, errors.New("acme storage: empty directory")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("acme storage: %w", err)
	}
	return &FileStorage{Dir: dir, locks: make(map[string]*flock.Flock)}, nil
}

func (s *FileStorage) path(key string) (string, error) {
	clean := filepath.ToSlash(filepath.Clean("/" + key))[1:]
	if clean == "" || clean != key || strings.Contains(key, "\\") {
		return "", fmt.Errorf("acme storage: invalid key %q", key)
	}
	return filepath.Join(s.Dir, filepath.FromSlash(key)), nil
}

// Load reads the value stored under key.
func (s *FileStorage) Load(_ context.Context, key string) ([]byte, error) {
	p, err := s.path(key)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("acme storage: load %s: %w", key, err)
	}
	return b, nil
}

// Store writes value under key atomically with mode 0600.
func (s *FileStorage) Store(_ context.Context, key string, value []byte) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("acme storage: store %s: %w", key, err)
	}
	if err := writeFileAtomic(p, value); err != nil {
		return fmt.Errorf("acme storage: store %s: %w", key, err)
	}
	return nil
}

func writeFileAtomic(path string, value []byte) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	// CreateTemp already uses 0600; Chmod makes the mode independent of that detail.
	if err = f.Chmod(0o600); err != nil {
		return err
	}
	if _, err = f.Write(value); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// Delete removes key; a missing key is not an error.
func (s *FileStorage) Delete(_ context.Context, key string) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("acme storage: delete %s: %w", key, err)
	}
	return nil
}

// List returns the keys of the files under prefix ("" for all).
func (s *FileStorage) List(_ context.Context, prefix string, recursive bool) ([]string, error) {
	root := s.Dir
	if prefix != "" {
		p, err := s.path(prefix)
		if err != nil {
			return nil, err
		}
		root = p
	}
	var keys []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p == root {
				return fs.SkipAll
			}
			return err
		}
		if d.IsDir() {
			if p != root && !recursive {
				return fs.SkipDir
			}
			if p != root && d.Name() == "locks" && filepath.Dir(p) == s.Dir {
				return fs.SkipDir
			}
			return nil
		}
		if strings.HasPrefix(d.Name(), ".") { // temporary files of writes in progress
			return nil
		}
		rel, err := filepath.Rel(s.Dir, p)
		if err != nil {
			return err
		}
		keys = append(keys, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("acme storage: list %s: %w", prefix, err)
	}
	return keys, nil
}

// Lock takes the advisory lock for name, waiting until it is free or ctx ends.
func (s *FileStorage) Lock(ctx context.Context, name string) error {
	dir := filepath.Join(s.Dir, "locks")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("acme storage: lock %s: %w", name, err)
	}
	l := flock.New(filepath.Join(dir, safeFileName(name)+".lock"), flock.SetPermissions(0o600))
	ok, err := l.TryLockContext(ctx, 50*time.Millisecond)
	if err != nil {
		return fmt.Errorf("acme storage: lock %s: %w", name, err)
	}
	if !ok {
		return fmt.Errorf("acme storage: lock %s: not acquired", name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.locks == nil {
		s.locks = make(map[string]*flock.Flock)
	}
	s.locks[name] = l
	return nil
}

// Unlock releases a lock taken by Lock.
func (s *FileStorage) Unlock(_ context.Context, name string) error {
	s.mu.Lock()
	l := s.locks[name]
	delete(s.locks, name)
	s.mu.Unlock()
	if l == nil {
		return fmt.Errorf("acme storage: unlock %s: not locked", name)
	}
	if err := l.Unlock(); err != nil {
		return fmt.Errorf("acme storage: unlock %s: %w", name, err)
	}
	return nil
}

// safeFileName maps an arbitrary string (an e-mail address, a host:port) to one path element.
func safeFileName(s string) string {
	s = strings.ToLower(s)
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '.', r == '-', r == '@', r == '+':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	out := b.String()
	if out == "" || strings.Trim(out, ".") == "" {
		return "_"
	}
	return out
}
