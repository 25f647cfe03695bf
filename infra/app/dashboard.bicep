// The operations workbook: stage latency, errors by code, cache hit ratio, voice spend,
// provider saturation and cold starts, read from Application Insights (workbook.json; its
// queries use the span and metric names the app emits, which a test checks).

@description('Name of the Application Insights component the workbook reads.')
param applicationInsightsName string

@description('Location of the workbook.')
param location string = resourceGroup().location

@description('Tags for the workbook.')
param tags object = {}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  // A workbook's name must be a GUID: stable per component, so redeploys update it.
  name: guid(applicationInsights.id, 'talk-operations')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: 'Talk operations'
    category: 'workbook'
    sourceId: applicationInsights.id
    serializedData: replace(loadTextContent('workbook.json'), '__APPLICATION_INSIGHTS_ID__', applicationInsights.id)
  }
}

@description('Resource id of the workbook (Azure portal: Application Insights > Workbooks > Talk operations).')
output workbookId string = workbook.id
