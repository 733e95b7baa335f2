"""Training side: dataset specs and catalogues, embedding, fusion training and evaluation."""
