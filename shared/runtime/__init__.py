"""A service's machinery: the app and its lifecycle (`service`), the one consumer path (`consumer`),
the transactional outbox (`outbox`), the database and migrations (`db`, `migrations/`), the log's
streams (`stream`), request admission (`admission`), background loops (`loops`) and metrics
(`metrics`). Never imports the client side."""
