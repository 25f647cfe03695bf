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

// Each rule: a log query over a window, fired when its measure passes the threshold.
var rules = [
  {
    name: 'server-errors'
    description: 'More than 5% of /talk requests answered 5xx over 15 minutes (a spent daily budget is not a failure).'
    severity: 1
    query: 'customMetrics | where name == "talk.requests" | summarize total = sum(valueSum), failed = sumif(valueSum, toint(customDimensions["status"]) >= 500 and tostring(customDimensions["code"]) != "budget_exhausted") | where total > 0 | extend ratio = 100.0 * failed / total'
    measure: 'ratio'
    threshold: 5
  }
  {
    name: 'slow-round-trip'
    description: 'The p95 /talk round trip is over 8 s over 15 minutes.'
    severity: 2
    query: 'requests | where name == "POST /talk" | summarize p95 = percentile(duration, 95)'
    measure: 'p95'
    threshold: 8000
  }
  {
    name: 'provider-throttling'
    description: 'A provider answered 429 in 15 minutes (refused instance slots, answered by the fallback voice, show in the workbook instead).'
    severity: 2
    query: 'customMetrics | where name == "talk.provider.throttled" and tostring(customDimensions["reason"]) != "instance_slots" | summarize throttled = sum(valueSum)'
    measure: 'throttled'
    threshold: 0
  }
  {
    // One address with the shipped function key can spend a day's budget for everyone.
    name: 'budget-spent'
    description: 'A daily spending budget is spent: until midnight UTC speech comes from the embedded voice, or /talk answers 503.'
    severity: 2
    query: 'customMetrics | where name == "talk.budget.spent" | summarize spent = sum(valueSum)'
    measure: 'spent'
    threshold: 0
  }
  {
    name: 'vault-or-storage-failures'
    description: 'Key Vault or Storage refused the app (401/403) or failed (5xx, no answer) in 15 minutes.'
    severity: 1
    query: 'union (dependencies | where target has "vault.azure.net" or target has ".core.windows.net" | where success == false and (toint(resultCode) in (0, 401, 403) or toint(resultCode) >= 500) | summarize failures = sum(itemCount)), (customMetrics | where name == "talk.requests" and tostring(customDimensions["code"]) in ("storage_unavailable", "missing_secret") | summarize failures = sum(valueSum)) | summarize failures = sum(failures)'
    measure: 'failures'
    threshold: 0
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
