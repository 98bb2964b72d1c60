"""Assets, one module per stage of the lineage."""
