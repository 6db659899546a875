"""The data contract (schema), its netCDF I/O, the workspace layout, serving runs and the serving store."""
