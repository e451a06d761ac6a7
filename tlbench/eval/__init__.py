"""`tlbench eval`: frozen features scored three ways from one extraction (docs/eval.md).

- `features`: the pooled features of every image, once per backbone, kept in the user cache (also
  the feature cache of `tlbench run --freeze all`);
- `linear`: multinomial logistic regression (L-BFGS), its L2 strength chosen on the selection split;
- `knn`: weighted cosine k-NN, k chosen on the selection split;
- `fewshot`: seeded N-way K-shot episodes with prototype and logistic-regression heads;
- `command`: the whole command, writing the evaluation folder.

Importing this package is cheap; each module loads torch itself.
"""
