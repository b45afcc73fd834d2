"""The serving stage: item map and requests, the scoring graph, the recommender, output, export."""
