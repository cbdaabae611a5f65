"""CI output: one case per model (fold or check), written as GitHub annotations and step
summaries or as JUnit XML. Writers take cases and return text; the CLI chooses and prints.
"""
