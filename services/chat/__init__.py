"""The chat service: owns every room's message sequence, history and presence."""
