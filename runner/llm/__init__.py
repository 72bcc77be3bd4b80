"""The model boundary: one call to a provider through the openai SDK (`client`), how its
failures are classified (`errors`), and how its body becomes an answer (`answers`). Knows nothing
of the queue or of extraction.
"""
