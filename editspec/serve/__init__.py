"""Serving: the editing proxy (`editspec serve`), the local model server (`editspec serve-model`),
the edited OpenAI client and the HTTP pieces they share."""
