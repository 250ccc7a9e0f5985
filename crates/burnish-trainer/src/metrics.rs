//! Evaluation metrics with the semantics of scikit-learn and seqeval.

use std::collections::BTreeSet;

/// Fraction of predictions equal to their label (labels −100 ignored); 0 when none count.
pub fn accuracy(predictions: &[i64], labels: &[i64]) -> f64 {
    let counted: Vec<(i64, i64)> = predictions
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l != -100)
        .map(|(p, l)| (*p, *l))
        .collect();
    if counted.is_empty() {
        return 0.0;
    }
    counted.iter().filter(|(p, l)| p == l).count() as f64 / counted.len() as f64
}

/// Macro-averaged F1 over the classes `0..num_classes` (scikit-learn's
/// `f1_score(average="macro")`, with F1 = 0 for a class never predicted nor present).
pub fn macro_f1(predictions: &[i64], labels: &[i64], num_classes: usize) -> f64 {
    if num_classes == 0 {
        return 0.0;
    }
    let mut total = 0.0;
    for c in 0..num_classes as i64 {
        let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
        for (&p, &l) in predictions.iter().zip(labels).filter(|(_, l)| **l != -100) {
            match (p == c, l == c) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, true) => fn_ += 1,
                (false, false) => {}
            }
        }
        let denom = 2 * tp + fp + fn_;
        total += if denom == 0 {
            0.0
        } else {
            2.0 * tp as f64 / denom as f64
        };
    }
    total / num_classes as f64
}

/// Entity-level scores of BIO tagging.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntityScores {
    /// Exact-match entities predicted that are right, over entities predicted.
    pub precision: f64,
    /// Over entities in the labels.
    pub recall: f64,
    /// Harmonic mean.
    pub f1: f64,
}

/// Entities `(type, start, end)` of a BIO tag sequence, with seqeval's default (non-strict)
/// rules: an `I-x` that does not continue an `x` entity starts a new one.
pub fn bio_entities(tags: &[&str]) -> BTreeSet<(String, usize, usize)> {
    let mut out = BTreeSet::new();
    let mut current: Option<(String, usize)> = None;
    for (i, tag) in tags.iter().chain(std::iter::once(&"O")).enumerate() {
        let (prefix, kind) = match tag.split_once('-') {
            Some((p, k)) => (p, k),
            None => ("O", ""),
        };
        let continues = prefix == "I" && current.as_ref().is_some_and(|(k, _)| k == kind);
        if !continues {
            if let Some((k, start)) = current.take() {
                out.insert((k, start, i));
            }
            if prefix == "B" || prefix == "I" {
                current = Some((kind.to_owned(), i));
            }
        }
    }
    out
}

/// seqeval's micro-averaged entity precision, recall and F1 over sentences.
pub fn entity_scores(predicted: &[Vec<&str>], gold: &[Vec<&str>]) -> EntityScores {
    let (mut correct, mut n_pred, mut n_gold) = (0usize, 0usize, 0usize);
    for (p, g) in predicted.iter().zip(gold) {
        let (p, g) = (bio_entities(p), bio_entities(g));
        correct += p.intersection(&g).count();
        n_pred += p.len();
        n_gold += g.len();
    }
    let precision = if n_pred == 0 {
        0.0
    } else {
        correct as f64 / n_pred as f64
    };
    let recall = if n_gold == 0 {
        0.0
    } else {
        correct as f64 / n_gold as f64
    };
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    EntityScores {
        precision,
        recall,
        f1,
    }
}

/// Perplexity `exp(mean token loss)`.
pub fn perplexity(mean_loss: f64) -> f64 {
    mean_loss.exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_and_macro_f1() {
        let p = [0, 1, 1, 2, 0];
        let l = [0, 1, 0, 2, -100];
        assert_eq!(accuracy(&p, &l), 0.75);
        // class 0: tp1 fn1 -> 2/3; class 1: tp1 fp1 -> 2/3; class 2: 1.
        assert!((macro_f1(&p, &l, 3) - (2.0 / 3.0 + 2.0 / 3.0 + 1.0) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn seqeval_entities() {
        let tags = ["B-per", "I-per", "O", "I-loc", "I-loc", "B-loc", "I-per"];
        let e: Vec<_> = bio_entities(&tags).into_iter().collect();
        assert_eq!(
            e,
            [
                ("loc".into(), 3, 5),
                ("loc".into(), 5, 6),
                ("per".into(), 0, 2),
                ("per".into(), 6, 7)
            ]
        );
        let gold = vec![vec!["B-per", "I-per", "O", "B-loc"]];
        let pred = vec![vec!["B-per", "I-per", "O", "O"]];
        let s = entity_scores(&pred, &gold);
        assert_eq!((s.precision, s.recall), (1.0, 0.5));
        assert!((s.f1 - 2.0 / 3.0).abs() < 1e-12);
    }
}
