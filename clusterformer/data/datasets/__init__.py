"""Data set registration (DatasetCatalog / MetadataCatalog)."""
