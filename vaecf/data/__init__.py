"""The data stage: interaction files → a dataset directory (readers, filters and split, format)."""
