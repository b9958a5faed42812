"""The command-line client: parses options, calls one ``qcli.api`` function, renders the result."""
