"""Wire frames, commands and events: the one schema source (msgspec Structs)."""
