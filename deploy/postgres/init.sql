-- Certbus database setup. The postgres image runs this once, on an empty data directory, as the
-- superuser with psql (docker-entrypoint-initdb.d; ON_ERROR_STOP is on), connected to `postgres`.
--
-- One login role per service (the five and ACME), each owning the schema of the same name. Each
-- service has rights on its own schema only: it cannot read or write another service's tables
-- (services learn from events, never from each other's tables). `public` is closed to them.
--
-- Passwords come from the container environment (psql 15 `\getenv`), never from this file:
-- CERTBUS_DB_<SERVICE>_PASSWORD. If one is unset the reference below stays unexpanded, the
-- statement fails and so does the init (the container stops; fix the variable, wipe the volume).

\set ON_ERROR_STOP on
\getenv enrollment_password CERTBUS_DB_ENROLLMENT_PASSWORD
\getenv signing_password CERTBUS_DB_SIGNING_PASSWORD
\getenv validation_password CERTBUS_DB_VALIDATION_PASSWORD
\getenv revocation_password CERTBUS_DB_REVOCATION_PASSWORD
\getenv audit_password CERTBUS_DB_AUDIT_PASSWORD
\getenv acme_password CERTBUS_DB_ACME_PASSWORD

CREATE DATABASE certbus;

CREATE ROLE enrollment LOGIN PASSWORD :'enrollment_password';
CREATE ROLE signing    LOGIN PASSWORD :'signing_password';
CREATE ROLE validation LOGIN PASSWORD :'validation_password';
CREATE ROLE revocation LOGIN PASSWORD :'revocation_password';
CREATE ROLE audit      LOGIN PASSWORD :'audit_password';
CREATE ROLE acme       LOGIN PASSWORD :'acme_password';

REVOKE ALL ON DATABASE certbus FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE certbus TO enrollment, signing, validation, revocation, audit, acme;
-- CREATE on the database: each service runs `CREATE SCHEMA IF NOT EXISTS <own schema>` at
-- start-up, which PostgreSQL checks against this privilege even when the schema exists; audit's
-- replay also builds a scratch schema (`audit_replay`). A role can only create schemas it owns;
-- it gets no rights on the others' schemas.
GRANT CREATE ON DATABASE certbus TO enrollment, signing, validation, revocation, audit, acme;

\connect certbus

REVOKE ALL ON SCHEMA public FROM PUBLIC;

CREATE SCHEMA enrollment AUTHORIZATION enrollment;
CREATE SCHEMA signing    AUTHORIZATION signing;
CREATE SCHEMA validation AUTHORIZATION validation;
CREATE SCHEMA revocation AUTHORIZATION revocation;
CREATE SCHEMA audit      AUTHORIZATION audit;
CREATE SCHEMA acme       AUTHORIZATION acme;
