"""Jobs, sensors and schedules, one module per domain (noticias, documents, training); each module's
`definitions()` gathers its domain's assets, checks, jobs, triggers and resources."""
