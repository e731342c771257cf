"""Extra `discodiff` subcommands, each in its own module and registered in cli.py."""
