// Log Analytics workspace plus a workspace-based Application Insights component.
// Local (key-based) auth is turned off on both: the Function App sends telemetry with its
// managed identity, which needs Monitoring Metrics Publisher (see rbac.bicep), and nothing
// here uses the workspace's shared keys (diagnostic settings do not need them).

@description('Name of the Log Analytics workspace.')
param logAnalyticsName string

@description('Name of the Application Insights component.')
param applicationInsightsName string

@description('Location of both resources.')
param location string = resourceGroup().location

@description('Tags for both resources.')
param tags object = {}

// One retention for both: Application Insights accepts only these values (the `@allowed` of
// retentionInDays in avm/res/insights/component 0.4.1), and the workspace any of 0 to 730
// (dataRetention in avm/res/operational-insights/workspace 0.16.1).
@description('Days Log Analytics and Application Insights keep data: one of the values Application Insights accepts.')
@allowed([
  30
  60
  90
  120
  180
  270
  365
  550
  730
])
param logRetentionDays int = 30

@description('Send Azure Verified Modules usage telemetry.')
param enableTelemetry bool = true

// Checked against the module source at tag avm/res/operational-insights/workspace/0.16.1:
// name, location, tags, dataRetention (int, 0-730), enableTelemetry and features
// (workspaceFeaturesType: disableLocalAuth bool?, added in 0.11.0; 0.7.0 had no way to set it).
// The module's defaults otherwise match 0.7.0's (PerGB2018, no daily cap, resource
// permissions off, forceCmkForQuery true).
module logAnalytics 'br/public:avm/res/operational-insights/workspace:0.16.1' = {
  name: 'log-analytics'
  params: {
    name: logAnalyticsName
    location: location
    tags: tags
    dataRetention: logRetentionDays
    // Entra ID only: no ingestion with the workspace's shared keys (agents, Data Collector API).
    features: {
      disableLocalAuth: true
    }
    enableTelemetry: enableTelemetry
  }
}

// Checked against the module source at tag avm/res/insights/component/0.4.1: it defaults
// disableIpMasking to true (every caller's address kept) and retentionInDays to 365, so both
// are set here.
module applicationInsights 'br/public:avm/res/insights/component:0.4.1' = {
  name: 'application-insights'
  params: {
    name: applicationInsightsName
    location: location
    tags: tags
    workspaceResourceId: logAnalytics.outputs.resourceId
    disableLocalAuth: true
    // Mask callers' IP addresses: client_IP is stored as 0.0.0.0 (the app's per-address rate
    // limit reads the address from the request, not from telemetry).
    disableIpMasking: false
    retentionInDays: logRetentionDays
    enableTelemetry: enableTelemetry
  }
}

@description('Resource id of the Log Analytics workspace (the target of the diagnostic settings).')
output logAnalyticsWorkspaceId string = logAnalytics.outputs.resourceId

@description('Name of the Application Insights component.')
output applicationInsightsName string = applicationInsights.outputs.name

@description('Connection string of the Application Insights component (not a secret with local auth off).')
output applicationInsightsConnectionString string = applicationInsights.outputs.connectionString
