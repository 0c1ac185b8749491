"""The operator console (SPEC §15): ``kagoflow console`` serves staff pages behind a login."""
