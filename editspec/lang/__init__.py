"""The language front end: parse `.edit` text (syntax), lower it to declarations (lower), resolve
names and imports into the IR (resolve), check it (checks) and print it canonically (fmt)."""
