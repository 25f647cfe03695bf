// Alerts on the app's own telemetry, e-mailed through one action group. Deployed only when
// an address is given (main.bicep): an alert nobody receives is noise in the portal.

@description('Name of the Application Insights component the alerts query.')
param applicationInsightsName string

@description('Address the alerts are e-mailed to.')
param alertEmail string

@description('Prefix of the alert and action group names.')
param namePrefix string

@description('Location of the alert rules.')
param location string = resourceGroup().location

@description('Tags for the alert rules and the action group.')
param tags object = {}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: '${namePrefix}-operators'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'talk-ops'
    enabled: true
    emailReceivers: [
      {
        name: 'operators'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

// Each rule: a log query over a window, fired when its measure passes the threshold. Each
// needs a volume first (at a quiet hour one request is the whole sample), and none counts
// what the Azure SDK does on purpose. tests/test_alerts.py runs every query over a day of
// telemetry shaped as the exporter writes it (a cold start, a quiet hour, outages).
var rules = [
  {
    // Five failed answers, whatever the traffic: fewer is one unlucky request, or one
    // person retrying it, which alone makes any ratio at a quiet hour. Five pages at night
    // too, when a provider is down for the few who ask; the ratio then covers busy hours.
    name: 'server-errors'
    description: 'At least 5 /talk requests, and more than 5% of them, answered 5xx over 15 minutes (a spent daily budget is not a failure).'
    severity: 1
    query: 'customMetrics | where name == "talk.requests" | summarize total = sum(valueSum), failed = sumif(valueSum, toint(customDimensions["status"]) >= 500 and tostring(customDimensions["code"]) != "budget_exhausted") | where failed >= 5 | extend ratio = 100.0 * failed / total'
    measure: 'ratio'
    threshold: 5
  }
  {
    // Under 20 requests the p95 is the slowest one or two: a cold start's first turn, which
    // reads the secrets and opens the clients. Sampled rows stand for itemCount requests.
    name: 'slow-round-trip'
    description: 'The p95 /talk round trip is over 8 s over 15 minutes, of at least 20 requests.'
    severity: 2
    query: 'requests | where name == "POST /talk" | summarize p95 = percentile(duration, 95), n = sum(itemCount) | where n >= 20'
    measure: 'p95'
    threshold: 8000
  }
  {
    // Every 429 answer counts, retries included (HTTP_RETRIES=2: one call counts up to 3).
    // One throttled call the retries saw through is no page; a quota or a plan's limit
    // that is reached makes dozens.
    name: 'provider-throttling'
    description: 'Providers answered 429 more than 5 times in 15 minutes (refused instance slots, answered by the fallback voice, show in the workbook instead).'
    severity: 2
    query: 'customMetrics | where name == "talk.provider.throttled" and tostring(customDimensions["reason"]) != "instance_slots" | summarize throttled = sum(valueSum)'
    measure: 'throttled'
    threshold: 5
  }
  {
    // One address with the shipped function key can spend a day's budget for everyone.
    // One event is enough: it is counted once per request that meets a spent budget (no
    // retries, no sampling), and the budget stays spent until midnight.
    name: 'budget-spent'
    description: 'A daily spending budget is spent: until midnight UTC speech comes from the embedded voice, or /talk answers 503.'
    severity: 2
    query: 'customMetrics | where name == "talk.budget.spent" | summarize spent = sum(valueSum)'
    measure: 'spent'
    threshold: 0
  }
  {
    // Counted by answer code, not `success`: the exporter records an Azure SDK call that
    // got an answer (401, 403, 503) as a success, one that got none as failed, code 504
    // (0 where `requests` records it). Key Vault's 401s are left out: the SDK's first request
    // per vault and process goes without a token on purpose (challenge auth), and a token
    // Key Vault refuses also ends in `missing_secret`. One Storage call failing all its 3
    // tries, and the 503 it causes, count 4: more is an outage or a removed role.
    name: 'vault-or-storage-failures'
    description: 'Key Vault or Storage refused the app (401/403) or failed (5xx, no answer), or /talk answered storage_unavailable or missing_secret, more than 4 times in 15 minutes.'
    severity: 1
    // Both branches sum reals: a union of a long and a real column of one name would make two
    // columns (failures_long, failures_real) and the outer summarize would find neither.
    query: 'union (dependencies | where target has "vault.azure.net" or target has ".core.windows.net" | where not(target has "vault.azure.net" and toint(resultCode) == 401) | where toint(resultCode) in (0, 401, 403) or toint(resultCode) >= 500 | summarize failures = sum(todouble(itemCount))), (customMetrics | where name == "talk.requests" and tostring(customDimensions["code"]) in ("storage_unavailable", "missing_secret") | summarize failures = sum(valueSum)) | summarize failures = sum(failures)'
    measure: 'failures'
    threshold: 4
  }
]

resource alerts 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [
  for rule in rules: {
    name: '${namePrefix}-${rule.name}'
    location: location
    tags: tags
    kind: 'LogAlert'
    properties: {
      displayName: '${namePrefix}: ${rule.name}'
      description: rule.description
      severity: rule.severity
      enabled: true
      scopes: [
        applicationInsights.id
      ]
      evaluationFrequency: 'PT5M'
      windowSize: 'PT15M'
      criteria: {
        allOf: [
          {
            query: rule.query
            timeAggregation: 'Maximum'
            metricMeasureColumn: rule.measure
            operator: 'GreaterThan'
            threshold: rule.threshold
            failingPeriods: {
              numberOfEvaluationPeriods: 1
              minFailingPeriodsToAlert: 1
            }
          }
        ]
      }
      autoMitigate: true
      actions: {
        actionGroups: [
          actionGroup.id
        ]
      }
    }
  }
]

@description('Resource id of the action group.')
output actionGroupId string = actionGroup.id
