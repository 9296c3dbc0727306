"""What the terminal shows: console, tables, banner, logs."""
