//! Full directory listing: every page of users, of groups, and of each group's members.

use super::directory::Group;
use super::profile::{OsUser, ProfileError, parse_group_page, parse_members, parse_user_page};
use crate::mds::{GceClient, MdsError, query_escape};

/// Most pages followed in one listing (a service that never ends its listing is cut off).
const MAX_PAGES: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Mds(#[from] MdsError),
    #[error("{what}: {source}")]
    Answer {
        what: String,
        #[source]
        source: ProfileError,
    },
    #[error("{0}: the listing did not end after {MAX_PAGES} pages or repeated a page token")]
    Endless(String),
}

/// The whole directory as listed now, plus the profiles and groups that were refused (with
/// why), for the log.
pub struct Listing {
    pub users: Vec<OsUser>,
    pub groups: Vec<Group>,
    pub refused: Vec<ProfileError>,
    pub requests: usize,
}

/// Follows `base` (`users?pagesize=N` ...) page by page, calling `page` with each answer;
/// `page` returns the next token.
async fn pages<F>(
    client: &GceClient,
    base: &str,
    requests: &mut usize,
    mut page: F,
) -> Result<(), SyncError>
where
    F: FnMut(serde_json::Value) -> Result<Option<String>, SyncError>,
{
    let mut token: Option<String> = None;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..MAX_PAGES {
        let path = match &token {
            Some(t) => format!("{base}&pagetoken={}", query_escape(t)),
            None => base.to_owned(),
        };
        *requests += 1;
        let answer = client.get_json::<serde_json::Value>(&path).await?;
        match page(answer)? {
            Some(next) if seen.insert(next.clone()) => token = Some(next),
            Some(_) => return Err(SyncError::Endless(base.to_owned())),
            None => return Ok(()),
        }
    }
    Err(SyncError::Endless(base.to_owned()))
}

pub async fn list_all(
    client: &GceClient,
    page_size: u32,
    floor: u32,
    now_usec: i64,
) -> Result<Listing, SyncError> {
    let mut requests = 0;
    let mut users = Vec::new();
    let mut refused = Vec::new();
    pages(
        client,
        &format!("oslogin/users?pagesize={page_size}"),
        &mut requests,
        |v| {
            let page =
                parse_user_page(&v, floor, now_usec).map_err(|source| SyncError::Answer {
                    what: "users".into(),
                    source,
                })?;
            users.extend(page.users);
            refused.extend(page.refused);
            Ok(page.next)
        },
    )
    .await?;
    let mut posix = Vec::new();
    pages(
        client,
        &format!("oslogin/groups?pagesize={page_size}"),
        &mut requests,
        |v| {
            let page = parse_group_page(&v, floor).map_err(|source| SyncError::Answer {
                what: "groups".into(),
                source,
            })?;
            posix.extend(page.groups);
            refused.extend(page.refused);
            Ok(page.next)
        },
    )
    .await?;
    let mut groups = Vec::with_capacity(posix.len());
    for g in posix {
        let mut members = Vec::new();
        let base = format!(
            "oslogin/users?groupname={}&pagesize={page_size}",
            query_escape(&g.name)
        );
        pages(client, &base, &mut requests, |v| {
            let (names, next) = parse_members(&v).map_err(|source| SyncError::Answer {
                what: format!("members of {}", g.name),
                source,
            })?;
            members.extend(names);
            Ok(next)
        })
        .await?;
        members.sort();
        members.dedup();
        groups.push(Group {
            name: g.name,
            gid: g.gid,
            members,
        });
    }
    Ok(Listing {
        users,
        groups,
        refused,
        requests,
    })
}
