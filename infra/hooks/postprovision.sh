#!/bin/sh
# azd postprovision hook: both steps are bounded and report what they did; neither stops
# a provision (azure.yaml: continueOnError).
status=0
sh "$(dirname "$0")/wait-for-roles.sh" || status=1
sh "$(dirname "$0")/pipeline-credential.sh" || status=1
exit "$status"
