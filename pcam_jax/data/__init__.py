"""PatchCamelyon data: sources, the grain input pipeline and the `pcam-data` tools."""
