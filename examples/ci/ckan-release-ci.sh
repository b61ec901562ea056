#!/usr/bin/env bash
# The commands both CI recipes run (github-actions.yml, gitlab-ci.yml), kept here so that they are the
# same in both and can be run by hand. Non-interactive: exit codes are ckan-release's own (0 done,
# 1 failed and what was rolled back is said, 2 bad input), and `set -e` stops at the first failure.
#
#   ckan-release-ci.sh build-and-stage   build (which publishes to the S3 store of `store:`), ship staging
#   ckan-release-ci.sh promote           promote what is live and healthy on staging to production
#
# Environment: CKAN_RELEASE (the command, default ckan-release), CKAN_RELEASE_CONFIG (default
# ckan-release.yml), CKAN_RELEASE_STAGING / CKAN_RELEASE_PRODUCTION (environment names, default
# staging / production); the AWS SDK's variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
# AWS_ENDPOINT_URL_S3 for an S3-compatible server); CKAN_RELEASE_VAULT_PASSWORD_FILE for vaulted secrets.
set -euo pipefail
read -r -a CR <<<"${CKAN_RELEASE:-ckan-release}"
CONFIG=${CKAN_RELEASE_CONFIG:-ckan-release.yml}
STAGING=${CKAN_RELEASE_STAGING:-staging}
PRODUCTION=${CKAN_RELEASE_PRODUCTION:-production}
cr() { "${CR[@]}" --config "$CONFIG" "$@"; }

case "${1:-}" in
  build-and-stage)
    # Progress goes to stderr (the job log); the artifact ID is the last line of stdout.
    id=$(cr build | tail -n 1)
    echo "built and published $id"
    cr ship "$STAGING" "$id"
    cr --json history "$STAGING" >history-staging.json
    ;;
  promote)
    cr promote "$STAGING" "$PRODUCTION"
    cr --json history "$PRODUCTION" >history-production.json
    ;;
  *)
    echo "usage: $0 build-and-stage | promote" >&2
    exit 2
    ;;
esac
