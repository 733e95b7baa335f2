"""Product features in a Feast feature store: schema, definitions, offline sources, online access."""
