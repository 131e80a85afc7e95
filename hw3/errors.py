"""The one exception type that means "the user asked for something wrong"."""


class UserError(Exception):
    """A mistake in the user's input (recipe, override, data path, checkpoint).

    The CLI prints it as one line `error: …` and exits with code 2; it never shows a traceback.
    """
