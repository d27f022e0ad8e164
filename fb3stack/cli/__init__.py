"""Command-line interface: `fb3stack <command>`; one module per command, registered in main.COMMANDS."""
