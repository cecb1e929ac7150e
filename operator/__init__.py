"""taskcreds-operator: admission webhook, credential broker and task lifecycle."""
