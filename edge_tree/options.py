"""Click options that more than one command takes."""

import click

draft_vocab_option = click.option(
    "--draft-vocab", default="auto", show_default=True,
    help="Tokens the draft may propose: auto (its 32768 most used when the vocabulary has 131072 "
         "or more), full, or a number N. A reduced draft is a copy derived once into the cache; "
         "the output does not change, only the draft's cost.")
