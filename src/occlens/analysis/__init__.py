"""Analysis on top of explanations: gradient saliency, faithfulness metrics, map similarity."""
