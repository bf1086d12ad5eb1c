"""Everything with I/O: settings, composition root, auth, QueryService, warehouses, noise, audit, REST, CLI."""
