"""The data contract (schema), its netCDF I/O and the workspace layout."""
