//! `logs --full`: the whole stdout/stderr of an invocation whose status holds a cut excerpt,
//! from where SSM wrote it: the S3 object behind `standardOutputUrl` / `standardErrorUrl`, else
//! CloudWatch Logs (the group of `cloudWatchOutputConfig`, the stream
//! `<commandId>/<instanceId>/<step>/stdout|stderr`). The standard AWS chain gives credentials
//! and region (`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL_CLOUDWATCH_LOGS` for tests); this is
//! the only part of the plugin that talks to AWS.
//!
//! Where SSM puts things (relied on, not guessed): S3 URLs as SSM reports them,
//! `https://s3.<region>.amazonaws.com/<bucket>/<key>` (path style; virtual-hosted URLs are
//! read too); CloudWatch streams named `<commandId>/<instanceId>/aws-runShellScript/stdout`,
//! i.e. the plugin name with `:` replaced by `-`, and the default group
//! `/aws/ssm/<DocumentName>` when output is enabled without a group name (SSM's
//! `CloudWatchOutputConfig` reference).

use aws_config::{BehaviorVersion, Region, SdkConfig};
use percent_encoding::percent_decode_str;
use ssm_operator::api::CommandInvocation;

use crate::logs::{Source, Stream, Text};

/// An S3 object SSM wrote output to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Object {
    /// The bucket.
    pub bucket: String,
    /// The key (decoded).
    pub key: String,
    /// The region named in the URL's host, if any.
    pub region: Option<String>,
}

/// A CloudWatch Logs stream SSM wrote output to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogStream {
    /// The log group.
    pub group: String,
    /// The stream.
    pub stream: String,
}

/// Where the whole text of one stream is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// In S3.
    S3(S3Object),
    /// In CloudWatch Logs.
    CloudWatch(LogStream),
}

/// Why the whole text could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FullError {
    /// SSM was not told to keep the output anywhere else.
    #[error("{0}: the whole text is only in SSM (the command was sent without an S3 bucket or CloudWatch Logs output)")]
    Nowhere(String),
    /// The URL in status is not an S3 URL we can read.
    #[error("{name}: cannot read the S3 URL {url:?}")]
    BadUrl {
        /// The invocation.
        name: String,
        /// The URL.
        url: String,
    },
    /// S3 refused or failed.
    #[error("{name}: reading s3://{bucket}/{key}: {message}")]
    S3 {
        /// The invocation.
        name: String,
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// What S3 (or the connection) said.
        message: String,
    },
    /// CloudWatch Logs refused or failed.
    #[error("{name}: reading CloudWatch Logs {group} {stream}: {message}")]
    CloudWatch {
        /// The invocation.
        name: String,
        /// Group.
        group: String,
        /// Stream.
        stream: String,
        /// What CloudWatch Logs (or the connection) said.
        message: String,
    },
}

/// Pure: bucket, key and region of an S3 URL as SSM reports it (path style
/// `https://s3[.-]<region>.amazonaws.com/<bucket>/<key>`, or virtual-hosted
/// `https://<bucket>.s3[.<region>].amazonaws.com/<key>`).
pub fn s3_object(url: &str) -> Option<S3Object> {
    let uri: http::Uri = url.parse().ok()?;
    let host = uri.host()?.to_ascii_lowercase();
    let path = uri.path().trim_start_matches('/');
    let decode = |s: &str| {
        percent_decode_str(s)
            .decode_utf8()
            .ok()
            .map(|c| c.into_owned())
    };
    let region_of = |rest: &str| -> Option<String> {
        // "s3.eu-west-1.amazonaws.com", "s3-eu-west-1.amazonaws.com", "s3.amazonaws.com"
        let rest = rest
            .strip_suffix(".amazonaws.com")
            .or_else(|| rest.strip_suffix(".amazonaws.com.cn"))?;
        let region = rest.trim_start_matches("s3").trim_start_matches(['.', '-']);
        let region = region.strip_prefix("dualstack.").unwrap_or(region);
        (!region.is_empty()).then(|| region.to_string())
    };
    if host.starts_with("s3.") || host.starts_with("s3-") {
        let (bucket, key) = path.split_once('/')?;
        return (!bucket.is_empty() && !key.is_empty()).then(|| {
            Some(S3Object {
                bucket: decode(bucket)?,
                key: decode(key)?,
                region: region_of(&host),
            })
        })?;
    }
    let at = host.find(".s3.").or_else(|| host.find(".s3-"))?;
    let bucket = &host[..at];
    (!bucket.is_empty() && !path.is_empty()).then(|| {
        Some(S3Object {
            bucket: bucket.to_string(),
            key: decode(path)?,
            region: region_of(&host[at + 1..]),
        })
    })?
}

/// Pure: the step name as SSM writes it in CloudWatch stream names (`aws:runShellScript` →
/// `aws-runShellScript`).
pub fn stream_step(plugin: &str) -> String {
    plugin.replace(':', "-")
}

/// Pure: where the whole text of `stream` of `cinv` is, if SSM was told to keep it anywhere.
pub fn location(cinv: &CommandInvocation, stream: Stream) -> Result<Location, FullError> {
    let name = cinv.metadata.name.clone().unwrap_or_default();
    let status = cinv.status.clone().unwrap_or_default();
    let url = match stream {
        Stream::Stdout => status.standard_output_url,
        Stream::Stderr => status.standard_error_url,
    };
    if let Some(url) = url.filter(|u| !u.is_empty()) {
        return s3_object(&url)
            .map(Location::S3)
            .ok_or(FullError::BadUrl { name, url });
    }
    let config = status.cloud_watch_output_config.unwrap_or_default();
    let group = config
        .cloud_watch_log_group_name
        .filter(|g| !g.is_empty())
        .or_else(|| {
            (config.cloud_watch_output_enabled == Some(true))
                .then(|| {
                    status
                        .document_name
                        .as_ref()
                        .map(|d| format!("/aws/ssm/{d}"))
                })
                .flatten()
        });
    let plugin = status.plugin_name.or_else(|| cinv.spec.plugin_name.clone());
    match (group, plugin) {
        (Some(group), Some(plugin)) if config.cloud_watch_output_enabled != Some(false) => {
            Ok(Location::CloudWatch(LogStream {
                group,
                stream: format!(
                    "{}/{}/{}/{}",
                    cinv.spec.command_id,
                    cinv.spec.instance_id,
                    stream_step(&plugin),
                    stream.as_str()
                ),
            }))
        }
        _ => Err(FullError::Nowhere(name)),
    }
}

/// Reads S3 and CloudWatch Logs with the standard AWS chain, loaded once on first use.
#[derive(Default)]
pub struct Fetcher {
    config: Option<SdkConfig>,
}

impl Fetcher {
    async fn config(&mut self) -> &SdkConfig {
        let config = match self.config.take() {
            Some(config) => config,
            None => aws_config::defaults(BehaviorVersion::latest()).load().await,
        };
        self.config.insert(config)
    }

    /// The whole text of `stream` of `cinv` (`region`: the resource's `spec.region`).
    pub async fn fetch(
        &mut self,
        cinv: &CommandInvocation,
        stream: Stream,
    ) -> Result<Text, FullError> {
        let name = cinv.metadata.name.clone().unwrap_or_default();
        let spec_region = cinv.spec.region.clone();
        match location(cinv, stream)? {
            Location::S3(object) => {
                let region = object.region.clone().or(spec_region);
                let text = self
                    .s3(&object, region)
                    .await
                    .map_err(|message| FullError::S3 {
                        name,
                        bucket: object.bucket.clone(),
                        key: object.key.clone(),
                        message,
                    })?;
                Ok(Text {
                    text,
                    cut: false,
                    source: Source::S3,
                })
            }
            Location::CloudWatch(log) => {
                let text = self
                    .cloudwatch(&log, spec_region)
                    .await
                    .map_err(|message| FullError::CloudWatch {
                        name,
                        group: log.group.clone(),
                        stream: log.stream.clone(),
                        message,
                    })?;
                Ok(Text {
                    text,
                    cut: false,
                    source: Source::CloudWatch,
                })
            }
        }
    }

    async fn s3(&mut self, object: &S3Object, region: Option<String>) -> Result<String, String> {
        let mut builder = aws_sdk_s3::config::Builder::from(self.config().await);
        if let Some(region) = region {
            builder = builder.region(Region::new(region));
        }
        let client = aws_sdk_s3::Client::from_conf(builder.build());
        let reply = client
            .get_object()
            .bucket(&object.bucket)
            .key(&object.key)
            .send()
            .await
            .map_err(|e| aws_sdk_s3::error::DisplayErrorContext(e).to_string())?;
        let bytes = reply
            .body
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .into_bytes();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn cloudwatch(
        &mut self,
        log: &LogStream,
        region: Option<String>,
    ) -> Result<String, String> {
        let mut builder = aws_sdk_cloudwatchlogs::config::Builder::from(self.config().await);
        if let Some(region) = region {
            builder = builder.region(Region::new(region));
        }
        let client = aws_sdk_cloudwatchlogs::Client::from_conf(builder.build());
        let mut lines: Vec<String> = Vec::new();
        let mut token: Option<String> = None;
        // GetLogEvents pages forward until the token stops moving (its documented end).
        loop {
            let reply = client
                .get_log_events()
                .log_group_name(&log.group)
                .log_stream_name(&log.stream)
                .start_from_head(true)
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|e| aws_sdk_cloudwatchlogs::error::DisplayErrorContext(e).to_string())?;
            let events = reply.events.unwrap_or_default();
            let empty = events.is_empty();
            lines.extend(events.into_iter().filter_map(|e| e.message));
            let next = reply.next_forward_token;
            if empty || next.is_none() || next == token {
                break;
            }
            token = next;
        }
        let mut text = lines.join("\n");
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssm_operator::api::{
        CloudWatchOutputConfig, CommandInvocationSpec, CommandInvocationStatus,
    };

    #[test]
    fn s3_urls_as_ssm_reports_them() {
        assert_eq!(
            s3_object("https://s3.eu-west-1.amazonaws.com/my-bucket/pre/fix/cmd/i-1/awsrunShellScript/0.awsrunShellScript/stdout"),
            Some(S3Object {
                bucket: "my-bucket".into(),
                key: "pre/fix/cmd/i-1/awsrunShellScript/0.awsrunShellScript/stdout".into(),
                region: Some("eu-west-1".into()),
            })
        );
        assert_eq!(
            s3_object("https://s3.amazonaws.com/b/k%20x"),
            Some(S3Object {
                bucket: "b".into(),
                key: "k x".into(),
                region: None
            })
        );
        assert_eq!(
            s3_object("https://s3-us-west-2.amazonaws.com/b/k").and_then(|o| o.region),
            Some("us-west-2".into())
        );
        assert_eq!(
            s3_object("https://my-bucket.s3.us-east-2.amazonaws.com/a/b/stderr"),
            Some(S3Object {
                bucket: "my-bucket".into(),
                key: "a/b/stderr".into(),
                region: Some("us-east-2".into())
            })
        );
        assert_eq!(s3_object("https://s3.amazonaws.com/only-bucket"), None);
        assert_eq!(s3_object("not a url"), None);
        assert_eq!(s3_object("https://example.com/b/k"), None);
    }

    fn cinv(status: CommandInvocationStatus, plugin: Option<&str>) -> CommandInvocation {
        let mut c = CommandInvocation::new(
            "web-i-1",
            CommandInvocationSpec {
                command_id: "8f2f6d1e-2b0c-4e4b-9a53-0c7b9f0e1a11".into(),
                instance_id: "i-0aaaaaaaaaaaaaaa1".into(),
                plugin_name: plugin.map(str::to_string),
                region: None,
                ttl_seconds_after_finished: None,
            },
        );
        c.status = Some(status);
        c
    }

    #[test]
    fn cloudwatch_streams_are_named_as_ssm_names_them() {
        let status = CommandInvocationStatus {
            plugin_name: Some("aws:runShellScript".into()),
            document_name: Some("AWS-RunShellScript".into()),
            cloud_watch_output_config: Some(CloudWatchOutputConfig {
                cloud_watch_log_group_name: Some("/ssm/run".into()),
                cloud_watch_output_enabled: Some(true),
            }),
            ..Default::default()
        };
        assert_eq!(
            location(&cinv(status.clone(), None), Stream::Stderr).unwrap(),
            Location::CloudWatch(LogStream {
                group: "/ssm/run".into(),
                stream: "8f2f6d1e-2b0c-4e4b-9a53-0c7b9f0e1a11/i-0aaaaaaaaaaaaaaa1/aws-runShellScript/stderr".into(),
            })
        );
        // Enabled without a group name: SSM's default group for the document.
        let mut default_group = status.clone();
        default_group.cloud_watch_output_config = Some(CloudWatchOutputConfig {
            cloud_watch_log_group_name: None,
            cloud_watch_output_enabled: Some(true),
        });
        match location(&cinv(default_group, None), Stream::Stdout).unwrap() {
            Location::CloudWatch(l) => assert_eq!(l.group, "/aws/ssm/AWS-RunShellScript"),
            other => panic!("{other:?}"),
        }
        // S3 wins when both are set.
        let mut both = status;
        both.standard_output_url = Some("https://s3.eu-west-1.amazonaws.com/b/k/stdout".into());
        assert!(matches!(
            location(&cinv(both, None), Stream::Stdout),
            Ok(Location::S3(_))
        ));
        // Neither: only SSM has it.
        assert!(matches!(
            location(
                &cinv(
                    CommandInvocationStatus::default(),
                    Some("aws:runShellScript")
                ),
                Stream::Stdout
            ),
            Err(FullError::Nowhere(_))
        ));
    }
}
