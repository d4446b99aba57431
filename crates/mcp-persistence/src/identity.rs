//! What both identity stores share: how a refresh token that could not be rotated is refused,
//! and how a stored revocation names its target.

/// Why a refresh token that could not be rotated was refused. A revoked token is `Dead` (its
/// family has been dealt with already); an unrevoked token that was used before is `Reused`,
/// even if it has expired since, because its reappearance betrays a theft while the rest of the
/// family may still be alive; an unused, unrevoked one can only have expired, so it is `Dead`.
pub(crate) fn refused_rotation(
    token: Option<mcp_core::identity::RefreshToken>,
) -> mcp_core::identity::Rotation {
    use mcp_core::identity::Rotation;
    match token {
        None => Rotation::Unknown,
        Some(token) if token.revoked_at.is_some() => Rotation::Dead { token },
        Some(token) if token.used_at.is_some() => Rotation::Reused { token },
        Some(token) => Rotation::Dead { token },
    }
}

/// The target of a stored revocation row.
pub(crate) fn revocation_target(
    kind: &str,
    key: &str,
) -> Result<mcp_core::identity::RevocationTarget, mcp_core::StoreError> {
    mcp_core::identity::RevocationTarget::parse(kind, key)
        .ok_or_else(|| crate::error::corrupt(format!("bad revocation `{kind}` `{key}`")))
}
