//! `skiff pull`: PullImage plus live per-layer progress from skiffd's admin API.
//!
//! On a terminal each layer gets a bar (bytes, rate, ETA); otherwise one plain line
//! per layer as it finishes. Against a runtime without the admin API (containerd)
//! the pull simply runs without progress.

use std::collections::HashMap;
use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use skiff_cri::api;
use skiff_cri::client::CriClient;
use tokio_stream::StreamExt;

use crate::admin::api::PullProgressRequest;
use crate::admin::api::admin_client::AdminClient;
use crate::cli::{CliError, rpc};

fn short(digest: &str) -> String {
    digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

/// Pull `image`, showing progress; returns the image ref.
pub async fn pull_with_progress(
    client: &mut CriClient,
    image: &str,
    auth: Option<api::AuthConfig>,
) -> Result<String, CliError> {
    let mut images = client.images.clone();
    let request = api::PullImageRequest {
        image: Some(api::ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }),
        auth,
        sandbox_config: None,
    };
    // Pulls take as long as they take: a day is the only limit here.
    let pull = rpc("PullImage", 86_400, images.pull_image(request));
    tokio::pin!(pull);

    let terminal = std::io::stdout().is_terminal();
    let mut admin = AdminClient::new(client.channel.clone());
    let stream = admin
        .pull_progress(PullProgressRequest {
            image: image.to_string(),
            interval_ms: if terminal { 100 } else { 1000 },
        })
        .await
        .ok()
        .map(|r| r.into_inner());
    let Some(mut stream) = stream else {
        return Ok(pull.await?.image_ref);
    };

    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix:.bold} {bar:30.cyan/blue} {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    let mut reported: HashMap<String, String> = HashMap::new();
    loop {
        tokio::select! {
            result = &mut pull => {
                // The last progress messages may trail the response: take them briefly.
                let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(300);
                while let Ok(Some(Ok(update))) = tokio::time::timeout_at(deadline, stream.next()).await {
                    show(&update, terminal, &multi, &style, &mut bars, &mut reported);
                    if update.finished {
                        break;
                    }
                }
                for bar in bars.values() {
                    bar.finish();
                }
                return Ok(result?.image_ref);
            }
            update = stream.next(), if true => {
                let Some(Ok(update)) = update else {
                    // Progress ended or is unavailable: wait for the pull alone.
                    let result = (&mut pull).await;
                    for bar in bars.values() {
                        bar.finish();
                    }
                    return Ok(result?.image_ref);
                };
                show(&update, terminal, &multi, &style, &mut bars, &mut reported);
            }
        }
    }
}

fn show(
    update: &crate::admin::api::PullProgressResponse,
    terminal: bool,
    multi: &MultiProgress,
    style: &ProgressStyle,
    bars: &mut HashMap<String, ProgressBar>,
    reported: &mut HashMap<String, String>,
) {
    for layer in &update.layers {
        if terminal {
            let bar = bars.entry(layer.digest.clone()).or_insert_with(|| {
                let b = multi.add(ProgressBar::new(layer.total));
                b.set_style(style.clone());
                b.set_prefix(short(&layer.digest));
                b
            });
            bar.set_position(layer.done);
            if matches!(layer.state.as_str(), "done" | "present") {
                bar.finish();
            }
        } else if matches!(layer.state.as_str(), "done" | "present" | "failed")
            && reported.get(&layer.digest) != Some(&layer.state)
        {
            println!(
                "{} {} {} bytes",
                short(&layer.digest),
                layer.state,
                layer.total
            );
            reported.insert(layer.digest.clone(), layer.state.clone());
        }
    }
}
