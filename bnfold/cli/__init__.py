"""Command-line front end: each command translates options into one library call."""
