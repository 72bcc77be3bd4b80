"""Extraction: from an answer's text and the names a model listed to canonical brands with
positions. `polish` cleans a raw name, `resolve` keys it and looks it up in the catalog, `find`
locates brands in the answer text. Pure code: no database, no model client, no I/O.
"""
