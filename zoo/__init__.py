"""Model zoo and datasets."""
