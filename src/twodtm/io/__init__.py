"""File input and output: MRC maps, particle tables and search results."""
