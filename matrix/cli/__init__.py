"""The command line: parse arguments and hand each subcommand to the pipeline."""
