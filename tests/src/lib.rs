//! Fixtures for the end-to-end tests: a real `docker-registry`, a token server, seeding.
