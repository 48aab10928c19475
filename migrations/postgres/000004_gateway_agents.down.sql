DROP TABLE IF EXISTS gateway_agents;
