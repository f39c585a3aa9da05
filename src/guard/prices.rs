//! What a submission is estimated to cost before CometAPI reports it: the price table
//! (`[[guard.prices]]`).
//!
//! Points are known only once CometAPI reports `point` in a callback or the feed; until
//! then a task would count nothing against the point budgets, and ten concurrent
//! submissions under a nearly spent budget would all pass. So each submission gets an
//! estimate from its body (`model`, and `duration` or `seconds`), counted from its
//! reservation on and replaced by the reported figure when it arrives.

use serde::Deserialize;

/// Seconds assumed for a video whose submission names no duration (CometAPI's default).
const DEFAULT_SECONDS: u64 = 10;
/// Longest duration an estimate believes (a typo must not refuse a whole budget).
const MOST_SECONDS: f64 = 120.0;

/// One row of the price table: a model's price, or (without a model) a route's default.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// The model priced (`gen4_turbo`), as submissions name it.
    pub model: Option<String>,
    /// Without `model`: the price of a submission on this path whose model has none
    /// (`/runway/pro/generate`).
    pub route: Option<String>,
    /// Points per second of output (video, audio).
    pub points_per_second: Option<u64>,
    /// Points per output (an image).
    pub points_per_output: Option<u64>,
    /// Seconds assumed when the submission names no duration (default 10).
    pub default_seconds: Option<u64>,
}

impl Price {
    /// A model's price per second of output.
    pub fn per_second(model: &str, points: u64) -> Price {
        Price {
            model: Some(model.to_owned()),
            route: None,
            points_per_second: Some(points),
            points_per_output: None,
            default_seconds: None,
        }
    }

    /// A model's price per output (an image).
    pub fn per_output(model: &str, points: u64) -> Price {
        Price {
            points_per_second: None,
            points_per_output: Some(points),
            ..Price::per_second(model, 0)
        }
    }

    fn points(&self, duration_ms: Option<u64>) -> u64 {
        if let Some(per_output) = self.points_per_output {
            return per_output;
        }
        let seconds = duration_ms.map_or(self.default_seconds.unwrap_or(DEFAULT_SECONDS) as f64, |ms| {
            (ms as f64 / 1000.0).min(MOST_SECONDS)
        });
        (self.points_per_second.unwrap_or(0) as f64 * seconds).ceil() as u64
    }
}

/// The table shipped: Runway's published API prices in credits (December 2026: credits
/// per second of video, per image), one credit taken as one point. CometAPI bills in
/// its own points, which may differ (its reported `point` replaces the estimate when it
/// arrives); set `[[guard.prices]]` to your own figures. Where Runway gives a range, the
/// top of it: an estimate that errs high keeps the budget.
pub fn default_prices() -> Vec<Price> {
    vec![
        Price::per_second("gen4.5", 12),
        Price::per_second("gen4_turbo", 5),
        Price::per_second("gen4_aleph", 15),
        Price::per_second("gen3a_turbo", 5),
        Price::per_second("act_two", 5),
        Price::per_second("veo3", 40),
        Price::per_second("veo3.1", 40),
        Price::per_second("veo3.1_fast", 15),
        Price::per_output("gen4_image", 8),
        Price::per_output("gen4_image_turbo", 2),
        Price::per_output("gemini_2.5_flash", 5),
    ]
}

/// What a submission is estimated to cost, and whether the table priced it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    /// Points.
    pub points: u64,
    /// Whether the table had a price for it (else `guard.unknown_model_points`).
    pub priced: bool,
}

/// Estimate a submission on `route` naming `model` for `duration_ms`: the model's price,
/// else the route's default, else `unknown`.
pub(crate) fn estimate(
    prices: &[Price],
    unknown: u64,
    model: Option<&str>,
    route: &str,
    duration_ms: Option<u64>,
) -> Estimate {
    let by_model = model.and_then(|model| prices.iter().find(|p| p.model.as_deref() == Some(model)));
    let by_route = || {
        prices
            .iter()
            .find(|p| p.model.is_none() && p.route.as_deref() == Some(route))
    };
    match by_model.or_else(by_route) {
        Some(price) => Estimate {
            points: price.points(duration_ms),
            priced: true,
        },
        None => Estimate {
            points: unknown,
            priced: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_come_from_the_model_then_the_route_then_the_default() {
        let mut prices = default_prices();
        prices.push(Price {
            model: None,
            route: Some("/runway/pro/generate".into()),
            points_per_second: Some(32),
            points_per_output: None,
            default_seconds: Some(5),
        });
        let est = |model, route, ms| estimate(&prices, 77, model, route, ms);
        let image_to_video = "/runwayml/v1/image_to_video";
        assert_eq!(est(Some("gen4_turbo"), image_to_video, Some(10_000)).points, 50);
        assert_eq!(
            est(Some("gen4_turbo"), image_to_video, None).points,
            50,
            "10 s by default"
        );
        assert_eq!(est(Some("gen4.5"), image_to_video, Some(2_500)).points, 30);
        assert_eq!(
            est(Some("gen4_image"), "/runwayml/v1/text_to_image", None).points,
            8
        );
        assert_eq!(
            est(Some("gen4_turbo"), image_to_video, Some(u64::MAX)).points,
            600,
            "capped"
        );
        let route_default = est(Some("gen4"), "/runway/pro/generate", None);
        assert_eq!(
            route_default,
            Estimate {
                points: 160,
                priced: true
            }
        );
        let unknown = est(Some("new_model"), image_to_video, Some(5_000));
        assert_eq!(
            unknown,
            Estimate {
                points: 77,
                priced: false
            }
        );
        assert!(!est(None, image_to_video, None).priced);
    }
}
