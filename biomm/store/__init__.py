"""The cohort store: a folder with a DuckDB manifest (`store.cohort.Cohort`), MEDS event shards
(`store.events`), cached image tensors (`store.image_cache`), de-identification keys and quarantine."""
