"""ConfigurableResources, one module per domain (noticias, documents, training), injected into jobs and assets."""
