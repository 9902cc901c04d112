"""Importers that keep the catalogue's readings current: each reading they take is stored as a dated
observation with the page it came from, and older readings are kept (history, trends, freshness)."""
