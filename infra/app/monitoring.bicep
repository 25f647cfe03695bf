// Log Analytics workspace plus a workspace-based Application Insights component.
// Local (instrumentation key) auth is turned off: the Function App sends telemetry with
// its managed identity, which needs Monitoring Metrics Publisher (see rbac.bicep).

@description('Name of the Log Analytics workspace.')
param logAnalyticsName string

@description('Name of the Application Insights component.')
param applicationInsightsName string

@description('Location of both resources.')
param location string = resourceGroup().location

@description('Tags for both resources.')
param tags object = {}

@description('Days Log Analytics keeps data.')
@minValue(30)
@maxValue(730)
param logRetentionDays int = 30

@description('Send Azure Verified Modules usage telemetry.')
param enableTelemetry bool = true

module logAnalytics 'br/public:avm/res/operational-insights/workspace:0.7.0' = {
  name: 'log-analytics'
  params: {
    name: logAnalyticsName
    location: location
    tags: tags
    dataRetention: logRetentionDays
    enableTelemetry: enableTelemetry
  }
}

module applicationInsights 'br/public:avm/res/insights/component:0.4.1' = {
  name: 'application-insights'
  params: {
    name: applicationInsightsName
    location: location
    tags: tags
    workspaceResourceId: logAnalytics.outputs.resourceId
    disableLocalAuth: true
    enableTelemetry: enableTelemetry
  }
}

@description('Resource id of the Log Analytics workspace.')
output logAnalyticsWorkspaceId string = logAnalytics.outputs.resourceId

@description('Name of the Application Insights component.')
output applicationInsightsName string = applicationInsights.outputs.name

@description('Connection string of the Application Insights component (not a secret with local auth off).')
output applicationInsightsConnectionString string = applicationInsights.outputs.connectionString
