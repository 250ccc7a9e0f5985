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

/// Mean squared error; 0 for no pairs.
pub fn mse(predictions: &[f64], targets: &[f64]) -> f64 {
    let n = predictions.len().min(targets.len());
    if n == 0 {
        return 0.0;
    }
    let sum: f64 = predictions
        .iter()
        .zip(targets)
        .map(|(p, t)| (p - t).powi(2))
        .sum();
    sum / n as f64
}

/// Pearson's correlation coefficient (SciPy's `pearsonr` statistic); NaN when either side
/// is constant or there are fewer than 2 pairs, as SciPy.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    if n < 2 {
        return f64::NAN;
    }
    let (x, y) = (&x[..n], &y[..n]);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / n as f64;
    let (mx, my) = (mean(x), mean(y));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return f64::NAN;
    }
    (sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0)
}

/// 1-based ranks with ties given their average rank (SciPy's `rankdata(method="average")`).
pub fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        // Positions start..end (0-based) share the mean of ranks start+1 ..= end.
        let rank = (start + end + 1) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

/// Spearman's rank correlation (SciPy's `spearmanr` statistic): Pearson's coefficient of
/// the average ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    pearson(&average_ranks(&x[..n]), &average_ranks(&y[..n]))
}

/// Scores of multi-label predictions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MultiLabelScores {
    /// F1 over all (example, label) decisions (scikit-learn `average="micro"`).
    pub micro_f1: f64,
    /// Mean of the per-label F1 (`average="macro"`, 0 for a label never predicted nor
    /// present).
    pub macro_f1: f64,
    /// Fraction of examples whose whole label set is right (`accuracy_score`).
    pub subset_accuracy: f64,
}

/// Multi-label scores of row-major `[examples, num_labels]` decisions.
pub fn multi_label_scores(
    predicted: &[bool],
    gold: &[bool],
    num_labels: usize,
) -> MultiLabelScores {
    let k = num_labels.max(1);
    let f1 = |tp: usize, fp: usize, fn_: usize| match 2 * tp + fp + fn_ {
        0 => 0.0,
        d => 2.0 * tp as f64 / d as f64,
    };
    let mut per_label = vec![(0usize, 0usize, 0usize); k];
    for (i, (&p, &g)) in predicted.iter().zip(gold).enumerate() {
        let c = &mut per_label[i % k];
        match (p, g) {
            (true, true) => c.0 += 1,
            (true, false) => c.1 += 1,
            (false, true) => c.2 += 1,
            (false, false) => {}
        }
    }
    let total = per_label
        .iter()
        .fold((0, 0, 0), |t, c| (t.0 + c.0, t.1 + c.1, t.2 + c.2));
    let rows = predicted.len().min(gold.len()) / k;
    let exact = predicted
        .chunks(k)
        .zip(gold.chunks(k))
        .take(rows)
        .filter(|(p, g)| p == g)
        .count();
    MultiLabelScores {
        micro_f1: f1(total.0, total.1, total.2),
        macro_f1: per_label.iter().map(|c| f1(c.0, c.1, c.2)).sum::<f64>() / k as f64,
        subset_accuracy: if rows == 0 {
            0.0
        } else {
            exact as f64 / rows as f64
        },
    }
}

/// An answer normalized as the official SQuAD evaluation script does before comparing:
/// lower case, ASCII punctuation removed, the articles `a`, `an`, `the` removed as whole
/// words, whitespace collapsed to single spaces.
pub fn normalize_answer(answer: &str) -> String {
    let lowered: String = answer
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    // Articles go where a word (a run of word characters, as regex `\b` sees them) is
    // exactly one of them.
    let mut out = String::with_capacity(lowered.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if matches!(word.as_str(), "a" | "an" | "the") {
            out.push(' ');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in lowered.chars() {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The gold answers SQuAD v2 scores against: the non-empty ones after normalization, or
/// the empty answer (no answer) when there is none.
fn squad_golds<'a>(golds: &[&'a str]) -> Vec<&'a str> {
    let real: Vec<&str> = golds
        .iter()
        .copied()
        .filter(|g| !normalize_answer(g).is_empty())
        .collect();
    if real.is_empty() { vec![""] } else { real }
}

/// SQuAD exact match of `prediction` against the best of `golds` (1 or 0); an empty
/// gold list (an unanswerable question) matches only the empty prediction (SQuAD v2).
pub fn squad_exact(prediction: &str, golds: &[&str]) -> f64 {
    let prediction = normalize_answer(prediction);
    let hit = squad_golds(golds)
        .iter()
        .any(|g| normalize_answer(g) == prediction);
    f64::from(u8::from(hit))
}

/// SQuAD token F1 of `prediction` against the best of `golds`, in [0, 1], as the official
/// v2 script computes it (an empty side scores 1 only when both are empty).
pub fn squad_f1(prediction: &str, golds: &[&str]) -> f64 {
    let predicted = normalize_answer(prediction);
    let predicted: Vec<&str> = predicted.split_whitespace().collect();
    squad_golds(golds)
        .iter()
        .map(|gold| {
            let gold = normalize_answer(gold);
            let gold: Vec<&str> = gold.split_whitespace().collect();
            if gold.is_empty() || predicted.is_empty() {
                return f64::from(u8::from(gold == predicted));
            }
            let mut counts: std::collections::HashMap<&str, (usize, usize)> =
                std::collections::HashMap::new();
            for t in &gold {
                counts.entry(t).or_default().0 += 1;
            }
            for t in &predicted {
                counts.entry(t).or_default().1 += 1;
            }
            let same: usize = counts.values().map(|&(g, p)| g.min(p)).sum();
            if same == 0 {
                return 0.0;
            }
            let precision = same as f64 / predicted.len() as f64;
            let recall = same as f64 / gold.len() as f64;
            2.0 * precision * recall / (precision + recall)
        })
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squad_scores_by_hand() {
        assert_eq!(
            normalize_answer("The  Eiffel-Tower, in Paris!"),
            "eiffeltower in paris"
        );
        assert_eq!(
            normalize_answer("an apple a day, theory"),
            "apple day theory"
        );
        assert_eq!(
            squad_exact("the Eiffel Tower", &["Eiffel Tower", "tower"]),
            1.0
        );
        assert_eq!(squad_exact("Eiffel", &["Eiffel Tower"]), 0.0);
        // 1 shared of 1 predicted and 2 gold: P 1, R 0.5.
        assert!((squad_f1("Eiffel", &["Eiffel Tower"]) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(squad_f1("tower", &["Eiffel Tower", "the tower"]), 1.0);
        // Unanswerable: only the empty prediction scores.
        assert_eq!(squad_exact("", &[]), 1.0);
        assert_eq!(squad_f1("", &[]), 1.0);
        assert_eq!(squad_f1("Paris", &[]), 0.0);
        assert_eq!(squad_f1("", &["Paris"]), 0.0);
        // Counted with multiplicity: one `a b` of pred `a b b`: P 2/3, R 1.
        assert!((squad_f1("x y y", &["x y"]) - 0.8).abs() < 1e-12);
    }
    use proptest::prelude::*;

    #[test]
    fn regression_scores_by_hand() {
        let (x, y) = ([1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 4.0, 5.0, 4.0, 5.0]);
        // Σdxdy = 6, Σdx² = 10, Σdy² = 6.
        assert!((pearson(&x, &y) - 6.0 / 60f64.sqrt()).abs() < 1e-12);
        // Ranks of y with ties: [1, 2.5, 4.5, 2.5, 4.5]; Σdxdy = 7, Σdy² = 9.
        assert_eq!(average_ranks(&y), [1.0, 2.5, 4.5, 2.5, 4.5]);
        assert!((spearman(&x, &y) - 7.0 / 90f64.sqrt()).abs() < 1e-12);
        assert!((mse(&x, &y) - (1.0 + 4.0 + 4.0 + 0.0 + 0.0) / 5.0).abs() < 1e-12);
        assert!(pearson(&x, &[3.0; 5]).is_nan());
        assert!(pearson(&[1.0], &[2.0]).is_nan());
    }

    #[test]
    fn multi_label_scores_as_scikit_learn() {
        let gold = [true, false, true, false, true, false];
        let pred = [true, false, false, false, true, true];
        let s = multi_label_scores(&pred, &gold, 3);
        // micro: tp 2, fp 1, fn 1; per label F1: 1, 1, 0; no row fully right.
        assert!((s.micro_f1 - 4.0 / 6.0).abs() < 1e-12);
        assert!((s.macro_f1 - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.subset_accuracy, 0.0);
        let perfect = multi_label_scores(&gold, &gold, 3);
        assert_eq!((perfect.micro_f1, perfect.subset_accuracy), (1.0, 1.0));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Pearson is symmetric, in [−1, 1], and unchanged by a positive affine map of one
        /// side; Spearman is unchanged by any strictly increasing map.
        #[test]
        fn correlation_invariants(
            pairs in prop::collection::vec((-1e3f64..1e3, -1e3f64..1e3), 2..40),
            scale in 0.1f64..10.0,
            shift in -100f64..100.0,
        ) {
            let (x, y): (Vec<f64>, Vec<f64>) = pairs.into_iter().unzip();
            let r = pearson(&x, &y);
            prop_assume!(r.is_finite());
            prop_assert!((-1.0..=1.0).contains(&r));
            prop_assert!((r - pearson(&y, &x)).abs() < 1e-9);
            let moved: Vec<f64> = x.iter().map(|v| v * scale + shift).collect();
            prop_assert!((r - pearson(&moved, &y)).abs() < 1e-6);
            let cubed: Vec<f64> = x.iter().map(|v| v.powi(3) + v).collect();
            let rho = spearman(&x, &y);
            prop_assert!((rho - spearman(&cubed, &y)).abs() < 1e-12);
            prop_assert!((spearman(&x, &x) - 1.0).abs() < 1e-12 || spearman(&x, &x).is_nan());
        }

        /// Multi-label scores lie in [0, 1] and are all 1 for perfect predictions.
        #[test]
        fn multi_label_bounds(
            gold in prop::collection::vec(any::<bool>(), 0..60),
            flips in prop::collection::vec(any::<bool>(), 60),
            k in 1usize..6,
        ) {
            let pred: Vec<bool> = gold.iter().zip(&flips).map(|(g, f)| g ^ f).collect();
            let s = multi_label_scores(&pred, &gold, k);
            for v in [s.micro_f1, s.macro_f1, s.subset_accuracy] {
                prop_assert!((0.0..=1.0).contains(&v));
            }
            prop_assert!(multi_label_scores(&gold, &gold, k).subset_accuracy == 1.0 || gold.len() < k);
        }
    }

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
