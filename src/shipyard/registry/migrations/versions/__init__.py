"""One module per schema revision, oldest first. A new table or column is a new revision."""
